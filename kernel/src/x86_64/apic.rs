//! The local APIC in xAPIC mode: its registers are 32-bit MMIO at
//! 0xFEE0_0000 (QEMU 7.2 under TCG offers no x2APIC). Each CPU has its own
//! behind the same address.
//!
//! Register offsets and bits: Intel SDM Vol. 3A §11.4 ("Local APIC"),
//! Table 11-1 ("Local APIC Register Address Map"), §11.5.4 (timer),
//! §11.6.1 (ICR, Figure 11-12), §11.9 (spurious vector); the
//! INIT-SIPI-SIPI sequence and its delays: Vol. 3A §9.4.4.1 ("Typical BSP
//! Initialization Sequence"). Vectors follow Linux's
//! arch/x86/include/asm/irq_vectors.h.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use lazymmu::addr::{PageSize, PhysAddr, VirtAddr};
use lazymmu::pgtable::format::{Attributes, MemoryType};

use crate::cpu::{self, inb, outb};
use crate::{paging, percpu};

/// Physical (and virtual: it is identity-mapped) address of the xAPIC
/// registers; IA32_APIC_BASE says where they are, and `init` checks it.
pub const BASE: u64 = 0xfee0_0000;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

const ID: u64 = 0x20;
const TPR: u64 = 0x80;
const EOI: u64 = 0xb0;
const SPURIOUS: u64 = 0xf0;
const ERROR_STATUS: u64 = 0x280;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const LVT_LINT0: u64 = 0x350;
const LVT_LINT1: u64 = 0x360;
const LVT_ERROR: u64 = 0x370;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
/// Divide configuration 0b0011: divide the bus clock by 16.
const DIVIDE_BY_16: u32 = 0b0011;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;

/// INIT, level assert, to all CPUs but the sender (shorthand 0b11).
pub const ICR_INIT_ALL_BUT_SELF: u32 = 0x000c_4500;
/// STARTUP, to all but self, starting at page `vector` (0x08: 0x8000).
pub const ICR_STARTUP_ALL_BUT_SELF: u32 = 0x000c_4600;

/// Linux's `LOCAL_TIMER_VECTOR`.
pub const TIMER_VECTOR: u8 = 0xec;
/// Linux's `CALL_FUNCTION_VECTOR`: cross-calls, TLB shootdowns among them.
pub const CALL_FUNCTION_VECTOR: u8 = 0xfb;
/// Linux's `RESCHEDULE_VECTOR`.
pub const RESCHEDULE_VECTOR: u8 = 0xfd;
/// Linux's `ERROR_APIC_VECTOR`.
pub const ERROR_VECTOR: u8 = 0xfe;
/// Linux's `SPURIOUS_APIC_VECTOR`.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Timer counts (bus clock / 16) per millisecond, measured by the boot CPU.
static TIMER_COUNTS_PER_MS: AtomicU32 = AtomicU32::new(0);
/// TSC cycles per millisecond, measured alongside.
static TSC_PER_MS: AtomicU64 = AtomicU64::new(0);

fn read(register: u64) -> u32 {
    // SAFETY: the APIC page is mapped (identity, uncached) before any
    // caller runs, and the register offsets are those of the SDM table.
    unsafe { ((BASE + register) as *const u32).read_volatile() }
}

fn write(register: u64, value: u32) {
    // SAFETY: as in `read`; each write only programs this CPU's APIC.
    unsafe { ((BASE + register) as *mut u32).write_volatile(value) }
}

/// Maps the APIC page (identity, device memory) in the kernel's tables.
///
/// # Errors
/// A message when the mapping cannot be made.
pub fn map() -> Result<(), &'static str> {
    let attrs = Attributes {
        memory: MemoryType::Device,
        ..Attributes::kernel_data()
    };
    paging::kernel_tables()
        .map(
            VirtAddr(BASE),
            PhysAddr(BASE),
            4096,
            attrs,
            PageSize::Size4K,
        )
        .map(|_| ())
        .map_err(|_| "mapping the local APIC failed")
}

/// Enables this CPU's APIC in xAPIC mode: spurious vector and software
/// enable, the error vector, task priority 0, every other local line
/// masked (the 8259 is masked too: nothing is wired to LINT0).
///
/// # Errors
/// A message when the APIC is not at [`BASE`] or is in x2APIC mode.
pub fn init_this_cpu() -> Result<u32, &'static str> {
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (CPUID.1:EDX[9]
    // on every x86-64 CPU); reading it has no side effect.
    let base = unsafe { cpu::rdmsr(IA32_APIC_BASE) };
    if base & 0xffff_f000 != BASE {
        return Err("the local APIC is not at 0xFEE00000");
    }
    if base & APIC_BASE_X2APIC != 0 || base & APIC_BASE_ENABLE == 0 {
        return Err("the local APIC is not in xAPIC mode");
    }
    write(SPURIOUS, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    write(LVT_TIMER, LVT_MASKED);
    write(LVT_LINT0, LVT_MASKED);
    write(LVT_LINT1, LVT_MASKED);
    write(LVT_ERROR, u32::from(ERROR_VECTOR));
    // The error status register is cleared by a write before a read.
    write(ERROR_STATUS, 0);
    write(TPR, 0);
    let id = id();
    percpu::this_cpu().apic_id.store(id, Ordering::Release);
    Ok(id)
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(EOI, 0);
}

/// Writes the ICR (destination first), after any previous IPI left the
/// send-pending state, with interrupts masked so that a handler cannot
/// interleave its own two writes.
fn write_icr(destination: u32, low: u32) {
    let were_enabled = cpu::disable_interrupts();
    while read(ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
        core::hint::spin_loop();
    }
    write(ICR_HIGH, destination << 24);
    write(ICR_LOW, low);
    if were_enabled {
        cpu::enable_interrupts();
    }
}

/// Sends fixed interrupt `vector` to the CPU with APIC id `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    write_icr(apic_id, ICR_LEVEL_ASSERT | u32::from(vector));
}

/// Sends an INIT IPI to every other CPU (the start of INIT-SIPI-SIPI).
pub fn send_init_all_but_self() {
    write_icr(0, ICR_INIT_ALL_BUT_SELF);
}

/// Sends a STARTUP IPI to every other CPU: they start in real mode at
/// `page << 12`.
pub fn send_startup_all_but_self(page: u8) {
    write_icr(0, ICR_STARTUP_ALL_BUT_SELF | u32::from(page));
}

/// Measures the APIC timer and the TSC against `ms` milliseconds of PIT
/// channel 2 counting down in mode 0, polled through port 0x61 — Linux's
/// `pit_calibrate_tsc()` (arch/x86/kernel/tsc.c). Polling the PIT's own
/// counter, rather than counting its interrupts, keeps a vCPU that the host
/// delays from losing ticks: under QEMU the PIT and the APIC timer both
/// follow the virtual clock.
pub fn calibrate(ms: u64) {
    // The PIT input clock, 1.193182 MHz (Intel 8254 datasheet).
    let latch = (1_193_182 * ms / 1000) as u16;
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(LVT_TIMER, LVT_MASKED);
    // SAFETY: port 0x61 (the speaker gate) and PIT channel 2 belong to the
    // kernel; the speaker output stays off (bit 1 clear).
    unsafe {
        outb(0x61, (inb(0x61) & !0x02) | 0x01);
        outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, latch as u8);
        outb(0x42, (latch >> 8) as u8);
    }
    write(TIMER_INITIAL, u32::MAX);
    let tsc_start = cpu::rdtsc();
    // SAFETY: as above; bit 5 is channel 2's output, high at terminal count.
    while unsafe { inb(0x61) } & 0x20 == 0 {
        core::hint::spin_loop();
    }
    let counted = u64::from(u32::MAX - read(TIMER_CURRENT));
    let tsc = cpu::rdtsc() - tsc_start;
    write(TIMER_INITIAL, 0);
    TIMER_COUNTS_PER_MS.store((counted / ms) as u32, Ordering::Release);
    TSC_PER_MS.store(tsc / ms, Ordering::Release);
}

/// APIC timer counts per millisecond (after [`calibrate`]).
pub fn timer_counts_per_ms() -> u32 {
    TIMER_COUNTS_PER_MS.load(Ordering::Acquire)
}

/// TSC cycles per millisecond (after [`calibrate`]).
pub fn tsc_per_ms() -> u64 {
    TSC_PER_MS.load(Ordering::Acquire).max(1)
}

/// Starts this CPU's timer, periodic at `hz`, on [`TIMER_VECTOR`].
pub fn start_timer(hz: u32) {
    let count = (u64::from(timer_counts_per_ms()) * 1000 / u64::from(hz)).max(1);
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(LVT_TIMER, LVT_PERIODIC | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, count.min(u64::from(u32::MAX)) as u32);
}

/// Busy-waits `micros` microseconds by the TSC (after [`calibrate`]).
pub fn delay_us(micros: u64) {
    let end = cpu::rdtsc() + tsc_per_ms() * micros / 1000;
    while cpu::rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// A deadline `ms` milliseconds from now, by the TSC.
pub fn deadline_ms(ms: u64) -> u64 {
    cpu::rdtsc() + tsc_per_ms() * ms
}
