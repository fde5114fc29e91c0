//! Thin wrappers over the privileged instructions the kernel uses. Each
//! is a single instruction; callers are responsible for what it does to the
//! machine, which is why most are `unsafe`.
//!
//! Source: Intel SDM Vol. 2 (instruction reference) and Vol. 4 (MSRs);
//! Vol. 3A section numbers in this crate are those of the 2023 and later
//! editions.

use core::arch::asm;

/// IA32_PKRS: the supervisor protection-key rights register (SDM Vol. 4,
/// Table 2-2, MSR 0x6E1).
pub const MSR_IA32_PKRS: u32 = 0x6e1;

/// CR4.PKS: enable protection keys for supervisor-mode pages (SDM Vol. 3A
/// §2.5, bit 24).
pub const CR4_PKS: u64 = 1 << 24;
/// CR4.PGE: global pages (SDM Vol. 3A §2.5, bit 7).
pub const CR4_PGE: u64 = 1 << 7;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device the caller drives.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller owns the device behind `port`.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a doubleword to an I/O port.
///
/// # Safety
/// The port must belong to a device the caller drives.
#[inline]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller owns the device behind `port`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// The port must belong to a device the caller drives.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller owns the device behind `port`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist on this CPU (otherwise #GP).
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller checked that the MSR exists.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must keep the machine in a state the
/// kernel expects.
#[inline]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR and the value. Not `nomem`:
    // an MSR such as IA32_PKRS changes which memory accesses are allowed.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// Invalidates the TLB entries for the page containing `va` (INVLPG).
#[inline]
pub fn invlpg(va: u64) {
    // SAFETY: dropping a cached translation never breaks memory safety; the
    // next access walks the page tables again.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

/// Reads CR3.
#[inline]
pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Loads CR3: switches to the tables at `value` and drops every non-global
/// translation.
///
/// # Safety
/// `value` must point at a top-level table that maps the running code,
/// stack and data the same way as the current one.
#[inline]
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: the caller guarantees the new tables map the kernel.
    unsafe { asm!("mov cr3, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Reads CR4.
#[inline]
pub fn read_cr4() -> u64 {
    let value: u64;
    // SAFETY: reading CR4 has no side effect.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes CR4.
///
/// # Safety
/// The bits must be supported and consistent with the kernel's state.
#[inline]
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: the caller vouches for the bits.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Reads CR2, the address of the last page fault.
#[inline]
pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC is allowed at CPL 0 and has no side effect.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Executes CPUID for `leaf` and `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, subleaf)
}

/// Enables interrupts.
#[inline]
pub fn enable_interrupts() {
    // SAFETY: the IDT is loaded before anyone calls this (see `interrupts`).
    unsafe { asm!("sti", options(nostack)) };
}

/// Disables interrupts; returns whether they were enabled.
#[inline]
pub fn disable_interrupts() -> bool {
    let flags: u64;
    // SAFETY: reading RFLAGS and clearing IF only delays interrupts.
    unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
    flags & (1 << 9) != 0
}

/// Halts until the next interrupt.
#[inline]
pub fn halt() {
    // SAFETY: HLT only waits for an interrupt.
    // Not `nomem`: interrupt handlers run and change memory while halted.
    unsafe { asm!("hlt", options(nostack, preserves_flags)) };
}

/// Whether interrupts are enabled (RFLAGS.IF).
#[inline]
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reading RFLAGS has no side effect.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Enables interrupts and halts until the next one, with no window between
/// the two for an interrupt to slip through unnoticed (the instruction
/// after STI runs before any interrupt is taken, SDM Vol. 2B "STI").
#[inline]
pub fn enable_and_halt() {
    // SAFETY: as `enable_interrupts` and `halt`.
    unsafe { asm!("sti", "hlt", options(nostack, preserves_flags)) };
}
