//! A small test harness for the guest: named checks whose failure carries a
//! formatted message, without an allocator, for both kernels. The
//! `test NAME ... ok` / `FAIL NAME: why` / `N passed, N failed` lines are
//! what `lazymmu boot` reads.

use core::fmt::{self, Write};

use crate::println;

/// A short text (a failure message, a table row), formatted into a fixed
/// buffer and truncated to it.
pub struct Message {
    buf: [u8; 240],
    len: usize,
}

impl Message {
    /// Formats `args`.
    pub fn new(args: fmt::Arguments<'_>) -> Self {
        let mut message = Message {
            buf: [0; 240],
            len: 0,
        };
        let _ = message.write_fmt(args);
        message
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole `str`s are copied in (cut at a char boundary).
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid message>")
    }
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one check.
pub type Outcome = Result<(), Message>;

/// Builds a [`Message`] with `format!` syntax.
#[macro_export]
macro_rules! message {
    ($($arg:tt)*) => { $crate::check::Message::new(format_args!($($arg)*)) };
}

/// Fails the check with a message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::message!($($arg)*));
        }
    };
}

/// Fails the check unless the two values are equal.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)*) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err($crate::message!(
                "{}: {:?} != {:?}", format_args!($($arg)*), left, right
            ));
        }
    }};
}

/// Counts passed and failed checks.
#[derive(Debug, Default)]
pub struct Report {
    /// Checks that passed.
    pub passed: u32,
    /// Checks that failed.
    pub failed: u32,
}

impl Report {
    /// Prints a check that cannot run on this machine (too few CPUs); it
    /// counts neither way.
    #[cfg_attr(
        not(target_arch = "x86_64"),
        expect(dead_code, reason = "only the x86-64 kernel runs on several CPUs")
    )]
    pub fn skip(&mut self, name: impl fmt::Display, why: impl fmt::Display) {
        println!("skip {name}: {why}");
    }

    /// Prints the `N passed, N failed` line and ends the run through the
    /// architecture's exit, with its success status only when nothing
    /// failed.
    pub fn conclude(&self) -> ! {
        println!("{} passed, {} failed", self.passed, self.failed);
        crate::exit::exit(if self.failed == 0 {
            crate::exit::SUCCESS
        } else {
            crate::exit::FAILURE
        })
    }

    /// Runs one named check and prints its result.
    pub fn run(&mut self, name: impl fmt::Display, check: impl FnOnce() -> Outcome) {
        match check() {
            Ok(()) => {
                self.passed += 1;
                println!("test {name} ... ok");
            }
            Err(message) => {
                self.failed += 1;
                println!("FAIL {name}: {}", message.as_str());
            }
        }
    }
}
