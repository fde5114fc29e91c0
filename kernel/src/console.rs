//! The console `lazymmu boot` reads: whole messages printed under one lock
//! through the architecture's UART (`serial::write_byte`: COM1 on x86-64,
//! the PL011 on arm64), and the `print!`/`println!` macros.

use core::fmt;

use crate::serial::write_byte;
use crate::sync::SpinLock;

/// The UART as a `fmt::Write`, with `\n` sent as `\r\n`.
struct Serial;

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
        $crate::console::print_fmt(format_args!($($arg)*))
    };
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {
        $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
