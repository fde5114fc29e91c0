//! Protection keys for supervisor pages (PKS): page-table pages carry a
//! dedicated key whose write-disable bit is set in IA32_PKRS by default.
//!
//! Section numbers are those of the Intel SDM since the 2023 editions, where
//! "Paging" is chapter 5 of Vol. 3A (chapter 4 before).
//!
//! - CPUID.(EAX=7,ECX=0):ECX[31] reports PKS (SDM Vol. 2A, CPUID, Table 3-8).
//! - CR4.PKS (bit 24) turns it on (SDM Vol. 3A §2.5).
//! - IA32_PKRS (MSR 0x6E1) holds two bits per key: AD at 2K, WD at 2K+1
//!   (SDM Vol. 3A §5.6.2, "Protection Keys").
//! - The key of a supervisor page is PTE bits 59–62 (SDM Vol. 3A §5.5,
//!   "4-Level Paging and 5-Level Paging"); a supervisor write to a present
//!   page whose key is write-disabled faults with error code P|W|PK = 0x23
//!   (§5.7, "Page-Fault Exceptions"; verified by the guest's tests).
//! - WRMSR to IA32_PKRS is not serialising (SDM Vol. 3A §5.6.2), but under
//!   QEMU TCG every PKRS write flushes the whole software TLB
//!   (`helper_wrmsr` in QEMU's `target/i386/tcg/sysemu/misc_helper.c`;
//!   shown by the guest's tests), so here it costs about a CR3 reload.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu::{self, MSR_IA32_PKRS};
use crate::percpu::PerCpuCounter;

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

static ENABLED: AtomicBool = AtomicBool::new(false);
static PKRS_WRITES: PerCpuCounter = PerCpuCounter::new();
static IRQ_PKRS_WRITES: PerCpuCounter = PerCpuCounter::new();

/// Whether the CPU supports PKS.
pub fn supported() -> bool {
    cpu::cpuid(0, 0).eax >= 7 && cpu::cpuid(7, 0).ecx & (1 << 31) != 0
}

/// Sets CR4.PKS and loads [`DEFAULT_PKRS`] on the boot CPU.
///
/// # Errors
/// `Err` with a message when the CPU lacks PKS.
pub fn enable() -> Result<(), &'static str> {
    if !supported() {
        return Err("CPU lacks PKS: CPUID.(EAX=7,ECX=0):ECX[31] is clear");
    }
    enable_this_cpu();
    ENABLED.store(true, Ordering::Release);
    Ok(())
}

/// Sets CR4.PKS and loads [`DEFAULT_PKRS`] on the executing CPU (every
/// application processor, after the boot CPU checked support).
pub fn enable_this_cpu() {
    // SAFETY: the boot CPU checked PKS support (every CPU of the machine
    // is the same model), so IA32_PKRS exists and
    // CR4.PKS may be set; no supervisor page carries a write-disabled key
    // that running code writes through except the page tables, which are
    // only written through a window (`lazymmu::backend::protected`).
    unsafe {
        cpu::wrmsr(MSR_IA32_PKRS, DEFAULT_PKRS);
        cpu::write_cr4(cpu::read_cr4() | cpu::CR4_PKS);
    }
}

/// The current IA32_PKRS ([`DEFAULT_PKRS`] before PKS is on, so that
/// window bookkeeping is the same either way).
pub fn read() -> u64 {
    if !ENABLED.load(Ordering::Acquire) {
        return DEFAULT_PKRS;
    }
    // SAFETY: PKS is enabled, so the MSR exists.
    unsafe { cpu::rdmsr(MSR_IA32_PKRS) }
}

/// Writes IA32_PKRS and counts it (windows, and exception entry and
/// return).
pub fn write_window(value: u64) {
    if !ENABLED.load(Ordering::Acquire) {
        return;
    }
    if crate::interrupts::in_interrupt() {
        IRQ_PKRS_WRITES.increment();
    } else {
        PKRS_WRITES.increment();
    }
    // SAFETY: PKS is enabled, so the MSR exists; the values written are
    // DEFAULT_PKRS or OPEN_PKRS, which only change the rights on page-table
    // pages.
    unsafe { cpu::wrmsr(MSR_IA32_PKRS, value) };
}

/// IA32_PKRS writes in task context on the executing CPU since boot.
pub fn writes() -> u64 {
    PKRS_WRITES.here()
}

/// IA32_PKRS writes in task context on every CPU since boot.
pub fn total_writes() -> u64 {
    PKRS_WRITES.total()
}

/// IA32_PKRS writes in interrupt context (exception entry and return,
/// handlers' own windows) on the executing CPU since boot.
pub fn irq_writes() -> u64 {
    IRQ_PKRS_WRITES.here()
}

/// Runs `f` with page-table pages writable: inside a section's window as
/// is, otherwise between an open and a close (2 counted writes). For the
/// zeroing of a new table, which the library does on memory directly.
pub fn with_page_table_window<R>(f: impl FnOnce() -> R) -> R {
    let before = read();
    if before & (DEFAULT_PKRS | (DEFAULT_PKRS >> 1)) == 0 {
        return f();
    }
    write_window(OPEN_PKRS);
    let result = f();
    write_window(before);
    result
}
