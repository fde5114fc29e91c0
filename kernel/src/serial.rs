//! COM1 (8250/16550 UART at 0x3F8), polled, for the console `lazymmu boot`
//! reads. Register layout: the National Semiconductor PC16550D datasheet.

use core::fmt;

use crate::cpu::{inb, outb};
use crate::sync::SpinLock;

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

fn write_byte(byte: u8) {
    // SAFETY: COM1 is the kernel's console and nothing else drives it.
    unsafe {
        while inb(LINE_STATUS) & TRANSMIT_EMPTY == 0 {}
        outb(COM1, byte);
    }
}

/// The console as a `fmt::Write`; [`print_fmt`] serialises whole
/// messages across CPUs.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                write_byte(b'\r');
            }
            write_byte(byte);
        }
        Ok(())
    }
}

/// Held while a CPU prints a message, so lines from several CPUs do not
/// interleave.
static CONSOLE: SpinLock<Serial> = SpinLock::new(Serial);

/// Prints `args` as one piece.
pub fn print_fmt(args: fmt::Arguments<'_>) {
    use fmt::Write as _;
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Prints `args` from a CPU that is going down: waits a bounded time for
/// the console (the CPU holding it may be the one that died) and prints
/// regardless.
pub fn print_fmt_dying(args: fmt::Arguments<'_>) {
    use fmt::Write as _;
    match CONSOLE.try_lock_for(10_000_000) {
        Some(mut console) => {
            let _ = console.write_fmt(args);
        }
        None => {
            let _ = Serial.write_fmt(args);
        }
    }
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::serial::print_fmt(format_args!($($arg)*))
    };
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {
        $crate::serial::print_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
