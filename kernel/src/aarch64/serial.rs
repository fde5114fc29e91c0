//! The PL011 UART of QEMU's virt machine, polled: the device behind
//! [`crate::console`], which `lazymmu boot` reads. Physical base
//! 0x0900_0000 (QEMU `hw/arm/virt.c`, `VIRT_UART`), reached through the
//! kernel's I/O window. Register layout: Arm PrimeCell UART (PL011)
//! Technical Reference Manual, DDI 0183: UARTDR at 0x000, UARTFR at 0x018
//! with TXFF in bit 5.

use super::memory::io;

/// Physical base of the PL011.
pub const UART_PHYS: u64 = 0x0900_0000;

const DATA: u64 = 0x000;
const FLAGS: u64 = 0x018;
const TRANSMIT_FULL: u32 = 1 << 5;

/// Sends one byte, waiting while the transmit FIFO is full.
pub fn write_byte(byte: u8) {
    let base = io(UART_PHYS);
    // SAFETY: the UART's registers are mapped as device memory in the I/O
    // window by the boot tables and the library's tables alike, and the
    // console lock serialises their users.
    unsafe {
        while ((base + FLAGS) as *const u32).read_volatile() & TRANSMIT_FULL != 0 {}
        ((base + DATA) as *mut u32).write_volatile(u32::from(byte));
    }
}
