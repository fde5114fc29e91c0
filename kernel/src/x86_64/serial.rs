//! COM1 (8250/16550 UART at 0x3F8), polled: the device behind
//! [`crate::console`], which `lazymmu boot` reads. Register layout: the
//! National Semiconductor PC16550D datasheet.

use crate::cpu::{inb, outb};

const COM1: u16 = 0x3f8;
const LINE_STATUS: u16 = COM1 + 5;
const TRANSMIT_EMPTY: u8 = 1 << 5;

/// Programs COM1 for 115200 baud, 8N1, FIFOs on, interrupts off.
pub fn init() {
    // SAFETY: COM1 is the kernel's console and nothing else drives it.
    unsafe {
        outb(COM1 + 1, 0x00); // no UART interrupts
        outb(COM1 + 3, 0x80); // DLAB on
        outb(COM1, 0x01); // divisor 1: 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8 bits, no parity, one stop bit
        outb(COM1 + 2, 0xc7); // FIFOs on and cleared
        outb(COM1 + 4, 0x03); // DTR, RTS
    }
}

/// Sends one byte, waiting until the transmitter can take it.
pub fn write_byte(byte: u8) {
    // SAFETY: COM1 is the kernel's console and nothing else drives it.
    unsafe {
        while inb(LINE_STATUS) & TRANSMIT_EMPTY == 0 {}
        outb(COM1, byte);
    }
}
