//! Protection keys for supervisor pages (PKS): page-table pages carry a
//! dedicated key whose write-disable bit is set in IA32_PKRS by default.
//!
//! - CPUID.(EAX=7,ECX=0):ECX[31] reports PKS (SDM Vol. 2A, CPUID, Table 3-8).
//! - CR4.PKS (bit 24) turns it on (SDM Vol. 3A §2.5).
//! - IA32_PKRS (MSR 0x6E1) holds two bits per key: AD at 2K, WD at 2K+1
//!   (SDM Vol. 3A §5.6.2, "Protection Keys").
//! - The key of a supervisor page is PTE bits 59–62 (SDM Vol. 3A §5.5,
//!   Table 5-20); a write to a present page whose key is write-disabled
//!   faults with error code P|W|PK = 0x23.
//! - WRMSR to IA32_PKRS is not serialising (SDM Vol. 3A §5.6.2), but under
//!   QEMU TCG every PKRS write flushes the whole software TLB
//!   (`target/i386/tcg/sysemu/misc_helper.c`), so here it costs about a CR3
//!   reload.

use crate::cpu::{self, MSR_IA32_PKRS};
use crate::local::Local;

/// The key every page-table page carries in the direct map.
pub const PAGE_TABLE_KEY: u8 = 1;

/// IA32_PKRS with writes to page-table pages disabled: the value every
/// context starts from.
pub const DEFAULT_PKRS: u64 = write_disable(PAGE_TABLE_KEY);

/// IA32_PKRS with page-table pages writable: the value inside a write
/// window.
pub const OPEN_PKRS: u64 = 0;

/// The PKRS value that write-disables `key`.
pub const fn write_disable(key: u8) -> u64 {
    1 << (2 * key as u32 + 1)
}

/// The PTE bits (59–62) that tag a page with `key`.
pub const fn pte_key_bits(key: u8) -> u64 {
    (key as u64 & 0xf) << 59
}

static ENABLED: Local<bool> = Local::new(false);
static WINDOW_WRITES: Local<u64> = Local::new(0);
static EXCEPTION_WRITES: Local<u64> = Local::new(0);

/// Whether the CPU supports PKS.
pub fn supported() -> bool {
    cpu::cpuid(0, 0).eax >= 7 && cpu::cpuid(7, 0).ecx & (1 << 31) != 0
}

/// Sets CR4.PKS and loads [`DEFAULT_PKRS`].
///
/// # Errors
/// `Err` with a message when the CPU lacks PKS.
pub fn enable() -> Result<(), &'static str> {
    if !supported() {
        return Err("CPU lacks PKS: CPUID.(EAX=7,ECX=0):ECX[31] is clear");
    }
    // SAFETY: PKS is supported (checked above), so IA32_PKRS exists and
    // CR4.PKS may be set; no supervisor page carries a write-disabled key
    // that running code writes through except the page tables, which are
    // only written through a window (see `KeyWindow`).
    unsafe {
        cpu::wrmsr(MSR_IA32_PKRS, DEFAULT_PKRS);
        cpu::write_cr4(cpu::read_cr4() | cpu::CR4_PKS);
    }
    ENABLED.set(true);
    Ok(())
}

/// Whether PKS is on.
pub fn enabled() -> bool {
    ENABLED.get()
}

/// The current IA32_PKRS.
pub fn read() -> u64 {
    if !ENABLED.get() {
        return 0;
    }
    // SAFETY: PKS is enabled, so the MSR exists.
    unsafe { cpu::rdmsr(MSR_IA32_PKRS) }
}

/// Writes IA32_PKRS on behalf of a page-table write window and counts it.
pub fn write_window(value: u64) {
    if !ENABLED.get() {
        return;
    }
    WINDOW_WRITES.increment();
    // SAFETY: PKS is enabled, so the MSR exists; the values written are
    // DEFAULT_PKRS or OPEN_PKRS, which only change the rights on page-table
    // pages.
    unsafe { cpu::wrmsr(MSR_IA32_PKRS, value) };
}

/// PKRS writes made by page-table write windows since boot.
pub fn window_writes() -> u64 {
    WINDOW_WRITES.get()
}

/// PKRS writes made by exception entry and return since boot.
pub fn exception_writes() -> u64 {
    EXCEPTION_WRITES.get()
}

/// Exception entry: loads [`DEFAULT_PKRS`] (an interrupted write window must
/// not leak into the handler) and returns the interrupted value.
pub fn exception_entry() -> u64 {
    if !ENABLED.get() {
        return DEFAULT_PKRS;
    }
    // Read the register, not a shadow: an interrupt may arrive between a
    // window's WRMSR and any bookkeeping after it.
    let interrupted = read();
    if interrupted != DEFAULT_PKRS {
        EXCEPTION_WRITES.increment();
        // SAFETY: PKS is enabled; DEFAULT_PKRS only restricts rights.
        unsafe { cpu::wrmsr(MSR_IA32_PKRS, DEFAULT_PKRS) };
    }
    interrupted
}

/// Exception return: restores the value [`exception_entry`] returned.
pub fn exception_exit(interrupted: u64) {
    if !ENABLED.get() {
        return;
    }
    if read() != interrupted {
        EXCEPTION_WRITES.increment();
        // SAFETY: PKS is enabled; this is the value the interrupted code had.
        unsafe { cpu::wrmsr(MSR_IA32_PKRS, interrupted) };
    }
}
