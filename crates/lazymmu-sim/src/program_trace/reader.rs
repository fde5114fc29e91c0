//! The streaming parser of program traces.
//!
//! [`Reader`] reads one line at a time from any [`BufRead`] and yields
//! [`Record`]s: memory stays bounded by the longest line
//! ([`MAX_LINE`] bytes) and the number of distinct files,
//! whatever the length of the trace. The first malformed line stops it
//! with a [`TraceError`] naming the file, the line, what was expected and
//! (at most 80 characters of) what was found. Calls it does not model are
//! skipped and counted ([`Reader::skipped_calls`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::BufRead;

use super::record::{
    Access, Backing, Call, Event, EventKind, ExitStatus, FileDecl, Outcome, Record, VmaReport,
};
use super::{FORMAT, MAX_LINE, VERSION};

/// Why a trace could not be read, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    /// The file name given to the reader.
    pub file: String,
    /// 1-based line number (0 when the input could not be read at all).
    pub line: u64,
    /// What the line should have held there.
    pub expected: String,
    /// What it held: a quoted excerpt of at most 80 characters, `end of
    /// line` or `end of file`.
    pub found: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: expected {}, found {}",
            self.file, self.line, self.expected, self.found
        )
    }
}

impl std::error::Error for TraceError {}

/// At most this many characters of a bad line are quoted in an error.
const QUOTE: usize = 80;

/// Quotes `text` for an error message, cut to [`QUOTE`] characters.
fn quote(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(QUOTE).collect();
    if chars.next().is_some() {
        format!("`{head}…`")
    } else {
        format!("`{head}`")
    }
}

/// How many distinct unknown call names are counted by name; the rest are
/// counted together, so a hostile trace cannot grow the table.
const NAMED_SKIPS: usize = 64;

/// Calls the reader skipped because the format does not model them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkippedCalls {
    /// Count per call name.
    pub by_name: BTreeMap<String, u64>,
    /// Skipped calls beyond the first 64 names.
    pub other: u64,
}

impl SkippedCalls {
    /// All skipped calls.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.by_name.values().sum::<u64>() + self.other
    }

    fn count(&mut self, name: &str) {
        if let Some(n) = self.by_name.get_mut(name) {
            *n += 1;
        } else if self.by_name.len() < NAMED_SKIPS {
            self.by_name.insert(name.to_owned(), 1);
        } else {
            self.other += 1;
        }
    }
}

/// Streams the records of a trace.
///
/// ```
/// use lazymmu_sim::program_trace::reader::Reader;
/// use lazymmu_sim::program_trace::record::{Call, EventKind, Outcome, Record};
///
/// let text = "lazymmu-trace 1\n\
///             @touches faults\n\
///             0 100 mmap 0 2000 3 22 - 0 = 7f0000000000\n\
///             5 100 msync 7f0000000000 2000 4 = 0\n";
/// let mut reader = Reader::new(text.as_bytes(), "example.trace");
/// let records: Vec<Record> = reader.by_ref().collect::<Result<_, _>>()?;
/// assert_eq!(records.len(), 2); // msync is skipped
/// assert!(matches!(
///     &records[1],
///     Record::Event(e) if e.kind == EventKind::Call {
///         call: Call::Mmap { addr: 0, len: 0x2000, prot: 3, flags: 0x22, file: None, offset: 0 },
///         result: Outcome::Returned(0x7f00_0000_0000),
///     }
/// ));
/// assert_eq!(reader.skipped_calls().by_name["msync"], 1);
/// # Ok::<(), lazymmu_sim::program_trace::reader::TraceError>(())
/// ```
pub struct Reader<R> {
    input: R,
    name: String,
    line: u64,
    buf: Vec<u8>,
    header_seen: bool,
    events_seen: bool,
    last_time: u64,
    files: HashSet<u32>,
    skipped: SkippedCalls,
    done: bool,
}

impl<R: BufRead> Reader<R> {
    /// A reader of `input`; `name` is the file name errors carry.
    pub fn new(input: R, name: impl Into<String>) -> Self {
        Reader {
            input,
            name: name.into(),
            line: 0,
            buf: Vec::with_capacity(256),
            header_seen: false,
            events_seen: false,
            last_time: 0,
            files: HashSet::new(),
            skipped: SkippedCalls::default(),
            done: false,
        }
    }

    /// Calls skipped so far because the format does not model them.
    #[must_use]
    pub fn skipped_calls(&self) -> &SkippedCalls {
        &self.skipped
    }

    /// Lines read so far: the line of the last record returned.
    #[must_use]
    pub fn lines_read(&self) -> u64 {
        self.line
    }

    /// The file name errors carry.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, expected: impl Into<String>, found: impl Into<String>) -> TraceError {
        TraceError {
            file: self.name.clone(),
            line: self.line,
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// Reads the next line into `buf` without its newline; `false` at the
    /// end of the input. A line longer than [`MAX_LINE`] is an error, found
    /// before more than `MAX_LINE + 1` bytes of it are held.
    fn read_line(&mut self) -> Result<bool, TraceError> {
        self.buf.clear();
        let mut any = false;
        loop {
            let available = match self.input.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.line += 1;
                    return Err(self.error("readable input", e.to_string()));
                }
            };
            if available.is_empty() {
                if any {
                    self.line += 1;
                }
                return Ok(any);
            }
            any = true;
            let (take, newline) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (available.len(), false),
            };
            let room = MAX_LINE + 1 - self.buf.len();
            self.buf.extend_from_slice(&available[..take.min(room)]);
            self.input.consume(if newline { take + 1 } else { take });
            if self.buf.len() > MAX_LINE {
                self.line += 1;
                let excerpt = String::from_utf8_lossy(&self.buf[..QUOTE.min(self.buf.len())]);
                return Err(self.error(
                    format!("a line of at most {MAX_LINE} bytes"),
                    format!("`{excerpt}…`"),
                ));
            }
            if newline {
                self.line += 1;
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
                return Ok(true);
            }
        }
    }

    fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            if !self.read_line()? {
                if !self.header_seen {
                    self.line = self.line.max(1);
                    return Err(
                        self.error(format!("the header `{FORMAT} {VERSION}`"), "end of file")
                    );
                }
                return Ok(None);
            }
            let buf = std::mem::take(&mut self.buf);
            let parsed = match std::str::from_utf8(&buf) {
                Ok(text) => self.parse_line(text),
                Err(_) => Err(self.error("UTF-8 text", quote(&String::from_utf8_lossy(&buf)))),
            };
            self.buf = buf;
            match parsed? {
                Some(record) => return Ok(Some(record)),
                None => continue,
            }
        }
    }

    fn parse_line(&mut self, text: &str) -> Result<Option<Record>, TraceError> {
        if !self.header_seen {
            let expected = format!("{FORMAT} {VERSION}");
            if text.trim_end() != expected {
                let version = text.strip_prefix(FORMAT).map(str::trim);
                let what = match version {
                    Some(v) if !v.is_empty() => {
                        format!("format version {VERSION} (this reader knows no other)")
                    }
                    _ => format!("the header `{expected}`"),
                };
                return Err(self.error(what, quote(text)));
            }
            self.header_seen = true;
            return Ok(None);
        }
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Ok(None);
        }
        if let Some(meta) = trimmed.strip_prefix('@') {
            if self.events_seen {
                return Err(self.error(
                    "an event (`@` lines come before the first event)",
                    quote(text),
                ));
            }
            let (key, value) = meta.split_once(' ').unwrap_or((meta, ""));
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(self.error(
                    "a key of lower-case letters, digits and `-` after `@`",
                    quote(text),
                ));
            }
            return Ok(Some(Record::Meta {
                key: key.to_owned(),
                value: value.trim().to_owned(),
            }));
        }
        let mut fields = Fields { rest: trimmed };
        if trimmed.starts_with("file ") || trimmed == "file" {
            fields.word();
            let decl = self.parse_file(&mut fields)?;
            self.files.insert(decl.id);
            return Ok(Some(Record::File(decl)));
        }
        let time = self.number(&mut fields, "a time in microseconds", 10)?;
        if time < self.last_time {
            return Err(self.error(
                format!(
                    "a time of at least {} (events are in time order)",
                    self.last_time
                ),
                quote(&time.to_string()),
            ));
        }
        let tid = self.number(&mut fields, "a thread id", 10)?;
        let tid = u32::try_from(tid).ok().filter(|&t| t > 0).ok_or_else(|| {
            self.error("a thread id from 1 to 4294967295", quote(&tid.to_string()))
        })?;
        let name = self.word(&mut fields, "an event name")?;
        let kind = match name {
            "fault" => {
                let addr = self.hex(&mut fields, "a page address in hexadecimal")?;
                if addr % super::PAGE_SIZE != 0 {
                    return Err(self.error("a page-aligned address", quote(&format!("{addr:x}"))));
                }
                let pages = self.number(&mut fields, "a page count", 10)?;
                if pages == 0 {
                    return Err(self.error("a page count of at least 1", quote("0")));
                }
                let access = match self.word(&mut fields, "an access letter (r, w, x or ?)")? {
                    "r" => Access::Read,
                    "w" => Access::Write,
                    "x" => Access::Execute,
                    "?" => Access::Unknown,
                    other => {
                        return Err(self.error("an access letter (r, w, x or ?)", quote(other)))
                    }
                };
                EventKind::Fault {
                    addr,
                    pages,
                    access,
                }
            }
            "vma" => EventKind::Vma(self.parse_vma(&mut fields)?),
            "exit" => {
                let status = self.word(&mut fields, "an exit code or a signal name")?;
                EventKind::Exit(if let Ok(code) = status.parse::<u32>() {
                    ExitStatus::Code(code)
                } else if status.starts_with("SIG")
                    && status[3..].bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    ExitStatus::Signal(status.to_owned())
                } else {
                    return Err(self.error("an exit code or a signal name", quote(status)));
                })
            }
            name => match self.parse_call(name, &mut fields)? {
                Some(kind) => kind,
                None => {
                    if !name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    {
                        return Err(self.error("an event name", quote(name)));
                    }
                    self.events_seen = true;
                    self.last_time = time;
                    self.skipped.count(name);
                    return Ok(None);
                }
            },
        };
        if let Some(extra) = fields.peek() {
            return Err(self.error("the end of the line", quote(extra)));
        }
        self.events_seen = true;
        self.last_time = time;
        Ok(Some(Record::Event(Event {
            time_us: time,
            tid,
            kind,
        })))
    }

    fn parse_file(&mut self, fields: &mut Fields<'_>) -> Result<FileDecl, TraceError> {
        let id = self.number(fields, "a file id", 10)?;
        let id = u32::try_from(id)
            .map_err(|_| self.error("a file id below 2^32", quote(&id.to_string())))?;
        let size = match self.word(fields, "a file size or `-`")? {
            "-" => None,
            word => Some(
                word.parse::<u64>()
                    .map_err(|_| self.error("a file size in bytes or `-`", quote(word)))?,
            ),
        };
        let raw = self.word(fields, "a path")?;
        let path = unescape(raw)
            .ok_or_else(|| self.error("a path with `%` followed by two hex digits", quote(raw)))?;
        if let Some(extra) = fields.peek() {
            return Err(self.error("the end of the line", quote(extra)));
        }
        Ok(FileDecl { id, size, path })
    }

    fn parse_vma(&mut self, fields: &mut Fields<'_>) -> Result<VmaReport, TraceError> {
        let start = self.hex(fields, "a start address in hexadecimal")?;
        let len = self.hex(fields, "a length in hexadecimal")?;
        let prot = self.hex(fields, "protection bits in hexadecimal")?;
        let shared = match self.word(fields, "`s` or `p`")? {
            "s" => true,
            "p" => false,
            other => return Err(self.error("`s` (shared) or `p` (private)", quote(other))),
        };
        let backing = match self.word(fields, "`-`, a file id or a [name]")? {
            "-" => Backing::Anonymous,
            word if word.starts_with('[') && word.ends_with(']') && word.len() > 2 => {
                Backing::Named(unescape(word).ok_or_else(|| self.error("a [name]", quote(word)))?)
            }
            word => Backing::File(self.file_ref(word)?),
        };
        let offset = self.hex(fields, "a file offset in hexadecimal")?;
        Ok(VmaReport {
            start,
            len,
            prot,
            shared,
            backing,
            offset,
        })
    }

    /// Parses a modelled call with its result; `None` for a name the format
    /// does not model (its arguments are not checked).
    fn parse_call(
        &mut self,
        name: &str,
        fields: &mut Fields<'_>,
    ) -> Result<Option<EventKind>, TraceError> {
        let call = match name {
            "mmap" => Call::Mmap {
                addr: self.hex(fields, "the address argument in hexadecimal")?,
                len: self.hex(fields, "the length in hexadecimal")?,
                prot: self.hex(fields, "protection bits in hexadecimal")?,
                flags: self.hex(fields, "mmap flags in hexadecimal")?,
                file: self.optional_file(fields)?,
                offset: self.hex(fields, "the file offset in hexadecimal")?,
            },
            "munmap" => Call::Munmap {
                addr: self.hex(fields, "the address in hexadecimal")?,
                len: self.hex(fields, "the length in hexadecimal")?,
            },
            "mprotect" => Call::Mprotect {
                addr: self.hex(fields, "the address in hexadecimal")?,
                len: self.hex(fields, "the length in hexadecimal")?,
                prot: self.hex(fields, "protection bits in hexadecimal")?,
            },
            "mremap" => Call::Mremap {
                old_addr: self.hex(fields, "the old address in hexadecimal")?,
                old_len: self.hex(fields, "the old length in hexadecimal")?,
                new_len: self.hex(fields, "the new length in hexadecimal")?,
                flags: self.hex(fields, "mremap flags in hexadecimal")?,
                new_addr: self.hex(fields, "the new address in hexadecimal")?,
            },
            "brk" => Call::Brk {
                addr: self.hex(fields, "the requested break in hexadecimal")?,
            },
            "madvise" => Call::Madvise {
                addr: self.hex(fields, "the address in hexadecimal")?,
                len: self.hex(fields, "the length in hexadecimal")?,
                advice: self.hex(fields, "the advice in hexadecimal")?,
            },
            "mlock" => Call::Mlock {
                addr: self.hex(fields, "the address in hexadecimal")?,
                len: self.hex(fields, "the length in hexadecimal")?,
                flags: self.hex(fields, "mlock2 flags in hexadecimal")?,
            },
            "munlock" => Call::Munlock {
                addr: self.hex(fields, "the address in hexadecimal")?,
                len: self.hex(fields, "the length in hexadecimal")?,
            },
            "mlockall" => Call::Mlockall {
                flags: self.hex(fields, "mlockall flags in hexadecimal")?,
            },
            "munlockall" => Call::Munlockall,
            "clone" => Call::Clone {
                flags: self.hex(fields, "clone flags in hexadecimal")?,
            },
            "execve" => Call::Execve {
                file: self.optional_file(fields)?,
            },
            _ => return Ok(None),
        };
        let equals = self.word(fields, "`=` and the result")?;
        if equals != "=" {
            return Err(self.error("`=` and the result", quote(equals)));
        }
        let word = self.word(fields, "the result")?;
        let result = if word == "?" {
            Outcome::Unknown
        } else if let Some(name) = word.strip_prefix('-') {
            if !(name.starts_with('E')
                && name.len() > 1
                && name.bytes().all(|b| b.is_ascii_alphanumeric()))
            {
                return Err(self.error("an error name such as `-ENOMEM`", quote(word)));
            }
            Outcome::Failed(name.to_owned())
        } else if call.returns_address() {
            Outcome::Returned(
                u64::from_str_radix(word, 16)
                    .map_err(|_| self.error("an address result in hexadecimal", quote(word)))?,
            )
        } else {
            Outcome::Returned(
                word.parse::<u64>()
                    .map_err(|_| self.error("a decimal result", quote(word)))?,
            )
        };
        Ok(Some(EventKind::Call { call, result }))
    }

    fn optional_file(&mut self, fields: &mut Fields<'_>) -> Result<Option<u32>, TraceError> {
        match self.word(fields, "a file id or `-`")? {
            "-" => Ok(None),
            word => self.file_ref(word).map(Some),
        }
    }

    fn file_ref(&self, word: &str) -> Result<u32, TraceError> {
        let id = word
            .parse::<u32>()
            .map_err(|_| self.error("a file id or `-`", quote(word)))?;
        if !self.files.contains(&id) {
            return Err(self.error(
                format!("file {id} to be declared by a `file` line before"),
                quote(word),
            ));
        }
        Ok(id)
    }

    fn word<'a>(&self, fields: &mut Fields<'a>, expected: &str) -> Result<&'a str, TraceError> {
        fields
            .word()
            .ok_or_else(|| self.error(expected, "end of line"))
    }

    fn number(
        &self,
        fields: &mut Fields<'_>,
        expected: &str,
        radix: u32,
    ) -> Result<u64, TraceError> {
        let word = self.word(fields, expected)?;
        if word.starts_with('+') {
            return Err(self.error(expected, quote(word)));
        }
        u64::from_str_radix(word, radix).map_err(|_| self.error(expected, quote(word)))
    }

    fn hex(&self, fields: &mut Fields<'_>, expected: &str) -> Result<u64, TraceError> {
        self.number(fields, expected, 16)
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

/// Space-separated fields of one line.
struct Fields<'a> {
    rest: &'a str,
}

impl<'a> Fields<'a> {
    fn word(&mut self) -> Option<&'a str> {
        let rest = self.rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            self.rest = rest;
            return None;
        }
        let end = rest.find([' ', '\t']).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        self.rest = tail;
        Some(word)
    }

    fn peek(&self) -> Option<&'a str> {
        let rest = self.rest.trim_start_matches([' ', '\t']);
        (!rest.is_empty()).then_some(rest)
    }
}

/// Undoes [`escape_path`](super::record): `%xx` becomes the byte `xx`.
fn unescape(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}
