//! Ending the run through QEMU's `isa-debug-exit` device (iobase 0xF4):
//! writing `v` makes QEMU exit with status `(v << 1) | 1`
//! (QEMU `hw/misc/debugexit.c`). A triple fault under `-no-reboot` exits
//! with 0, so neither status here is 0.

use crate::cpu::{halt, outl};

const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Value written when every test passed: QEMU exits with 33.
pub const SUCCESS: u32 = 0x10;
/// Value written on any failure or panic: QEMU exits with 35.
pub const FAILURE: u32 = 0x11;

/// Stops the machine with `value`.
pub fn exit(value: u32) -> ! {
    // SAFETY: the debug-exit device exists on the machine `lazymmu boot`
    // starts; writing it ends the emulator.
    unsafe { outl(DEBUG_EXIT_PORT, value) };
    // Without the device (another machine), stay halted.
    loop {
        crate::cpu::disable_interrupts();
        halt();
    }
}
