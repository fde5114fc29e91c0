//! Interrupts: the GICv2 of QEMU's virt machine and the EL1 virtual timer
//! behind it, the tick count, interrupt context, and a hook the tests run
//! from the timer interrupt.
//!
//! Sources: Arm GIC Architecture Specification v2 (IHI 0048B): distributor
//! GICD_CTLR 0x000, GICD_ISENABLER<n> 0x100, GICD_IPRIORITYR<n> 0x400;
//! CPU interface GICC_CTLR 0x00, GICC_PMR 0x04, GICC_IAR 0x0C, GICC_EOIR
//! 0x10; INTID 1023 is spurious. Arm ARM (DDI 0487), "The Generic Timer"
//! and the register descriptions of CNTV_TVAL_EL0 and CNTV_CTL_EL0 (ENABLE bit 0, IMASK bit 1); the
//! virtual timer is PPI 11, INTID 27 (the `timer` node of QEMU's device
//! tree, `hw/arm/virt.c` `ARCH_TIMER_VIRT_IRQ`).

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::cpu;
use super::fdt::Range;
use super::memory::io;

/// INTID of the EL1 virtual timer.
pub const TIMER_INTID: u32 = 27;

const GICD_CTLR: u64 = 0x000;
const GICD_ISENABLER: u64 = 0x100;
const GICD_IPRIORITYR: u64 = 0x400;
const GICC_CTLR: u64 = 0x00;
const GICC_PMR: u64 = 0x04;
const GICC_IAR: u64 = 0x0c;
const GICC_EOIR: u64 = 0x10;
const SPURIOUS: u32 = 1023;

static DISTRIBUTOR: AtomicU64 = AtomicU64::new(0);
static CPU_INTERFACE: AtomicU64 = AtomicU64::new(0);
static TIMER_INTERVAL: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static DEPTH: AtomicU32 = AtomicU32::new(0);
static HOOK: AtomicUsize = AtomicUsize::new(0);

fn write32(address: u64, value: u32) {
    // SAFETY: `address` is a GIC register in the I/O window, mapped as
    // device memory; only this module drives the GIC.
    unsafe { (address as *mut u32).write_volatile(value) }
}

fn read32(address: u64) -> u32 {
    // SAFETY: as `write32`.
    unsafe { (address as *const u32).read_volatile() }
}

/// Programs the GIC at the physical ranges the device tree gave
/// (distributor, CPU interface): the timer's INTID enabled at a middle
/// priority, every priority let through, both interfaces on.
pub fn init_gic(gic: [Range; 2]) {
    let distributor = io(gic[0].base);
    let cpu_interface = io(gic[1].base);
    DISTRIBUTOR.store(distributor, Ordering::Relaxed);
    CPU_INTERFACE.store(cpu_interface, Ordering::Relaxed);
    let priority = distributor + GICD_IPRIORITYR + u64::from(TIMER_INTID & !3);
    let shift = 8 * (TIMER_INTID % 4);
    write32(
        priority,
        (read32(priority) & !(0xff << shift)) | (0x80 << shift),
    );
    write32(
        distributor + GICD_ISENABLER + 4 * u64::from(TIMER_INTID / 32),
        1 << (TIMER_INTID % 32),
    );
    write32(distributor + GICD_CTLR, 1);
    write32(cpu_interface + GICC_PMR, 0xff);
    write32(cpu_interface + GICC_CTLR, 1);
}

fn arm_timer(interval: u64) {
    // SAFETY: programming the EL1 virtual timer only schedules its
    // interrupt.
    unsafe {
        asm!(
            "msr cntv_tval_el0, {interval}",
            "msr cntv_ctl_el0, {enable}",
            "isb",
            interval = in(reg) interval,
            enable = in(reg) 1u64,
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// Starts the virtual timer at `hz` interrupts per second.
pub fn start_timer(hz: u64) {
    let interval = cpu::counter_frequency() / hz;
    TIMER_INTERVAL.store(interval, Ordering::Relaxed);
    arm_timer(interval);
}

/// Timer interrupts so far.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Whether the CPU is running an interrupt handler.
pub fn in_interrupt() -> bool {
    DEPTH.load(Ordering::Relaxed) > 0
}

/// Runs `hook` from every timer interrupt (`None` stops it).
pub fn set_timer_hook(hook: Option<fn()>) {
    HOOK.store(hook.map_or(0, |f| f as usize), Ordering::Release);
}

/// Waits (interrupts on) until `n` more timer ticks have passed.
pub fn wait_ticks(n: u64) {
    let start = ticks();
    while ticks() < start + n {
        cpu::wait_for_interrupt();
    }
}

/// The IRQ vector's work: acknowledge, run the timer's tick, end.
pub fn handle() {
    DEPTH.fetch_add(1, Ordering::Relaxed);
    let cpu_interface = CPU_INTERFACE.load(Ordering::Relaxed);
    loop {
        let iar = read32(cpu_interface + GICC_IAR);
        let intid = iar & 0x3ff;
        if intid == SPURIOUS {
            break;
        }
        if intid == TIMER_INTID {
            arm_timer(TIMER_INTERVAL.load(Ordering::Relaxed));
            TICKS.fetch_add(1, Ordering::Relaxed);
            let hook = HOOK.load(Ordering::Acquire);
            if hook != 0 {
                // SAFETY: `HOOK` only ever holds 0 or a `fn()` stored by
                // `set_timer_hook`.
                let hook: fn() = unsafe { core::mem::transmute::<usize, fn()>(hook) };
                hook();
            }
        }
        write32(cpu_interface + GICC_EOIR, iar);
    }
    DEPTH.fetch_sub(1, Ordering::Relaxed);
}
