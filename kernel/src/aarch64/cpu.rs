//! Thin wrappers over the system registers and instructions the kernel
//! uses. Each is a single instruction (or an `isb` and a read); callers are
//! responsible for what it does to the machine, which is why the ones that
//! change translation or exception state are `unsafe`.
//!
//! Source: Arm ARM (DDI 0487), the A64 instruction descriptions and the
//! AArch64 system register descriptions.

use core::arch::asm;

/// Reads a system register by name.
macro_rules! read_sysreg {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading an ID, counter or status register has no side
        // effect.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags)) };
        value
    }};
}
pub(crate) use read_sysreg;

/// DAIF.I: IRQs masked.
const DAIF_IRQ: u64 = 1 << 7;

/// Masks IRQs; returns whether they were unmasked.
#[inline]
pub fn disable_interrupts() -> bool {
    let daif = read_sysreg!("daif");
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("msr daifset, #2", options(nomem, nostack, preserves_flags)) };
    daif & DAIF_IRQ == 0
}

/// Unmasks IRQs.
#[inline]
pub fn enable_interrupts() {
    // SAFETY: the kernel's handlers are installed before the first unmask.
    unsafe { asm!("msr daifclr, #2", options(nomem, nostack, preserves_flags)) };
}

/// Waits for an interrupt (`wfi`).
#[inline]
pub fn wait_for_interrupt() {
    // SAFETY: waits; an unmasked interrupt or a pending one wakes it.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}

/// The virtual counter (`CNTVCT_EL0`), read after an `isb` so that it is
/// not read early (Arm ARM, the CNTVCT_EL0 description: reads may be
/// speculated otherwise).
#[inline]
pub fn counter() -> u64 {
    let value: u64;
    // SAFETY: an `isb` and a counter read have no side effect on memory.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// The counter's frequency in Hz (`CNTFRQ_EL0`).
#[inline]
pub fn counter_frequency() -> u64 {
    read_sysreg!("cntfrq_el0")
}

/// Loads TTBR0_EL1 with `value` (table address and ASID) and
/// synchronises.
///
/// # Safety
/// The tables must map nothing the running code relies on in the lower
/// half, or map it as before.
#[inline]
pub unsafe fn write_ttbr0(value: u64) {
    // SAFETY: the caller vouches for the tables.
    unsafe { asm!("msr ttbr0_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags)) };
}

/// Loads TTBR1_EL1 with `value` and synchronises.
///
/// # Safety
/// The tables must map the running code, its stack and everything it
/// touches next at the same addresses.
#[inline]
pub unsafe fn write_ttbr1(value: u64) {
    // SAFETY: the caller vouches for the tables.
    unsafe { asm!("msr ttbr1_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags)) };
}

/// TTBR1_EL1.
#[inline]
pub fn read_ttbr1() -> u64 {
    read_sysreg!("ttbr1_el1")
}

/// `tlbi vmalle1` on this CPU only, completed: drops every translation
/// the CPU cached, for table switches the library's flushes do not cover.
#[inline]
pub fn local_flush_all() {
    // SAFETY: invalidating TLB entries never breaks memory safety; the
    // tables in memory stay what they are.
    unsafe {
        asm!(
            "dsb nshst",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Exception syndrome of the last exception taken to EL1.
#[inline]
pub fn esr() -> u64 {
    read_sysreg!("esr_el1")
}

/// Faulting virtual address of the last abort taken to EL1.
#[inline]
pub fn far() -> u64 {
    read_sysreg!("far_el1")
}
