//! Reading input files line by line without trusting them: a line longer
//! than the limit is refused as soon as the limit is passed (so reading
//! `/dev/zero` ends at once instead of filling memory), and errors quote at
//! most [`QUOTE`] characters of what was read.

use std::io::{BufRead, Read};

use anyhow::{Context, Result};

use crate::exit::bad_input;
use crate::text::{excerpt, thousands};

/// Characters of a bad line an error message quotes.
pub const QUOTE: usize = 80;

/// The lines of an input, each at most `max` bytes.
pub struct Lines<R> {
    reader: R,
    name: String,
    max: usize,
    number: usize,
}

impl<R: BufRead> Lines<R> {
    /// Lines of `reader`, called `name` in errors, each at most `max`
    /// bytes (without the line end).
    pub fn new(reader: R, name: impl Into<String>, max: usize) -> Self {
        Self {
            reader,
            name: name.into(),
            max,
            number: 0,
        }
    }

    /// The input's name, for errors about a line: `name:number`.
    pub fn at(&self) -> String {
        format!("{}:{}", self.name, self.number)
    }

    /// The next line and its number (from 1), without its line end.
    ///
    /// # Errors
    /// The input cannot be read (an I/O error naming the input); a line is
    /// longer than the limit or is not UTF-8 (a [`bad_input`] error naming
    /// the line and quoting its start).
    pub fn next_line(&mut self) -> Result<Option<(usize, String)>> {
        let mut bytes = Vec::new();
        // One byte over the limit, plus the newline, tells a long line
        // from one that just fits.
        let read = (&mut self.reader)
            .take(self.max as u64 + 2)
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("cannot read {}", self.name))?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.len() > self.max {
            let start = String::from_utf8_lossy(&bytes[..bytes.len().min(4 * QUOTE)]);
            return Err(bad_input(format!(
                "{}: line longer than the limit of {} bytes: {}",
                self.at(),
                thousands(self.max as u64),
                excerpt(&start, QUOTE)
            )));
        }
        let line = String::from_utf8(bytes).map_err(|e| {
            let start = String::from_utf8_lossy(e.as_bytes()).into_owned();
            bad_input(format!(
                "{}: not UTF-8 text: {}",
                self.at(),
                excerpt(&start, QUOTE)
            ))
        })?;
        Ok(Some((self.number, line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Refused;

    #[test]
    fn lines_are_numbered_without_their_ends() {
        let mut lines = Lines::new(&b"one\r\ntwo\n\nlast"[..], "t", 10);
        assert_eq!(lines.next_line().unwrap(), Some((1, "one".into())));
        assert_eq!(lines.next_line().unwrap(), Some((2, "two".into())));
        assert_eq!(lines.next_line().unwrap(), Some((3, String::new())));
        assert_eq!(lines.next_line().unwrap(), Some((4, "last".into())));
        assert_eq!(lines.next_line().unwrap(), None);
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_over_is_refused() {
        let mut lines = Lines::new(&b"0123456789\n01234567890\n"[..], "t", 10);
        assert_eq!(lines.next_line().unwrap().unwrap().1, "0123456789");
        let error = lines.next_line().unwrap_err();
        let message = error.downcast_ref::<Refused>().unwrap().to_string();
        assert!(message.starts_with("t:2: line longer than the limit of 10 bytes"));
    }

    #[test]
    fn an_endless_line_is_refused_quoting_80_characters() {
        let endless = std::io::BufReader::new(std::io::repeat(b'z'));
        let mut lines = Lines::new(endless, "/dev/zero", 4096);
        let message = lines.next_line().unwrap_err().to_string();
        assert!(message.contains("line longer than the limit of 4,096 bytes"));
        assert!(message.contains(&"z".repeat(QUOTE)));
        assert!(!message.contains(&"z".repeat(QUOTE + 1)));
    }
}
