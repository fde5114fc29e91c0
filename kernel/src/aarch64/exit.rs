//! Ending the run through Arm semihosting: `SYS_EXIT` (operation 0x18)
//! with `hlt #0xf000` on AArch64, its parameter block holding the reason
//! `ADP_Stopped_ApplicationExit` (0x20026) and the exit status, which QEMU
//! (started with `-semihosting`) returns to the host as its own status.
//! Source: Arm "Semihosting for AArch32 and AArch64" (the semihosting trap
//! instruction, `SYS_EXIT` and its AArch64 parameter block). PSCI `SYSTEM_OFF` and a crash both end QEMU with 0, so neither
//! status here is 0; they are the x86-64 kernel's `isa-debug-exit`
//! statuses, so that `lazymmu boot` judges both kernels alike.

use core::arch::asm;

/// Status when every test passed.
pub const SUCCESS: u32 = 33;
/// Status on any failure or panic.
pub const FAILURE: u32 = 35;

const SYS_EXIT: u64 = 0x18;
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// Stops the machine with `status`.
pub fn exit(status: u32) -> ! {
    let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(status)];
    // SAFETY: the semihosting trap reads the two-word block on this stack
    // and ends the emulator; without semihosting it is an undefined
    // instruction, and the loop below is never left either way.
    unsafe {
        asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack));
    }
    loop {
        super::cpu::disable_interrupts();
        super::cpu::wait_for_interrupt();
    }
}
