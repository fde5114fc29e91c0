//! Reading what `strace -f -ff -X raw -y --absolute-timestamps=unix,ns`
//! wrote: one file per thread, one line per system call, signal or exit.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A line of one thread's strace output that matters to a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A system call.
    Call(Syscall),
    /// The thread ended (`+++ exited with N +++`, `+++ killed by SIG +++`,
    /// `+++ superseded by execve +++`).
    Exit {
        /// Wall-clock time in nanoseconds.
        time_ns: u64,
        /// Exit code, or the signal's name.
        status: Status,
    },
}

/// How a thread ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// `exited with N`.
    Code(u32),
    /// `killed by SIGX`.
    Signal(String),
}

/// One system call as strace printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syscall {
    /// Wall-clock time of the entry, in nanoseconds.
    pub time_ns: u64,
    /// The call's name.
    pub name: String,
    /// The arguments as printed, split at top-level commas.
    pub args: Vec<String>,
    /// What it returned.
    pub result: Returned,
}

/// A call's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Returned {
    /// A value (`= 0x7f...`, `= 0`, `= 1234`).
    Value(u64),
    /// `= -1 ENOMEM (...)`: the error's name.
    Error(String),
    /// `= ?`: no result.
    Unknown,
}

/// Reads every `PREFIX.<tid>` file in `dir`: the entries of each thread,
/// in its order.
///
/// # Errors
/// A file cannot be read, or a line is not strace's.
pub fn read_dir(dir: &Path, prefix: &str) -> Result<Vec<(u32, Vec<Entry>)>> {
    let mut threads = Vec::new();
    for item in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = item?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(tid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|tid| tid.parse::<u32>().ok())
        else {
            continue;
        };
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read strace output {}", path.display()))?;
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            match parse_line(line) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(error) => bail!("{}:{}: {error}", path.display(), number + 1),
            }
        }
        threads.push((tid, entries));
    }
    threads.sort_by_key(|(tid, _)| *tid);
    Ok(threads)
}

/// Parses one line; `None` for lines that carry nothing for a trace
/// (signals, strace's own notes).
///
/// # Errors
/// The line does not start with a timestamp or a call is malformed.
pub fn parse_line(line: &str) -> Result<Option<Entry>, String> {
    let line = line.trim_end();
    if line.is_empty() {
        return Ok(None);
    }
    let (stamp, rest) = line
        .split_once(' ')
        .ok_or_else(|| format!("expected a timestamp and an event, found `{}`", cut(line)))?;
    let time_ns = parse_stamp(stamp)?;
    let rest = rest.trim_start();
    if let Some(note) = rest.strip_prefix("+++ ") {
        let note = note.trim_end_matches(" +++");
        let status = if let Some(code) = note.strip_prefix("exited with ") {
            Status::Code(
                code.trim()
                    .parse()
                    .map_err(|_| format!("bad exit code in `{}`", cut(line)))?,
            )
        } else if let Some(signal) = note.strip_prefix("killed by ") {
            Status::Signal(
                signal
                    .split_whitespace()
                    .next()
                    .unwrap_or("SIGKILL")
                    .to_owned(),
            )
        } else if note.starts_with("superseded by execve") {
            Status::Code(0)
        } else {
            return Ok(None);
        };
        return Ok(Some(Entry::Exit { time_ns, status }));
    }
    if rest.starts_with("---") || rest.starts_with('<') {
        return Ok(None);
    }
    parse_call(rest, time_ns).map(|c| Some(Entry::Call(c)))
}

fn cut(text: &str) -> String {
    text.chars().take(80).collect()
}

/// `1796523576.662783849` → nanoseconds.
fn parse_stamp(stamp: &str) -> Result<u64, String> {
    let (secs, frac) = stamp.split_once('.').ok_or_else(|| {
        format!(
            "expected a unix timestamp with nanoseconds, found `{}`",
            cut(stamp)
        )
    })?;
    let secs: u64 = secs
        .parse()
        .map_err(|_| format!("bad timestamp `{}`", cut(stamp)))?;
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad timestamp `{}`", cut(stamp)));
    }
    let digits = u32::try_from(frac.len()).unwrap_or(9);
    let frac: u64 = frac
        .parse()
        .map_err(|_| format!("bad timestamp `{}`", cut(stamp)))?;
    Ok(secs * 1_000_000_000 + frac * 10u64.pow(9 - digits))
}

/// `name(args) = result <duration>`.
fn parse_call(text: &str, time_ns: u64) -> Result<Syscall, String> {
    let open = text
        .find('(')
        .ok_or_else(|| format!("expected `name(args) = result`, found `{}`", cut(text)))?;
    let name = &text[..open];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "expected a system call name, found `{}`",
            cut(text)
        ));
    }
    let (args, close) = split_args(&text[open + 1..])
        .ok_or_else(|| format!("unbalanced arguments in `{}`", cut(text)))?;
    let after = text[open + 1 + close + 1..].trim_start();
    let result = after
        .strip_prefix('=')
        .ok_or_else(|| format!("expected `= result` after the arguments in `{}`", cut(text)))?
        .trim_start();
    let mut words = result.split_whitespace();
    let value = words.next().unwrap_or("?");
    let result = if value == "?" {
        Returned::Unknown
    } else if value == "-1" {
        let name = words
            .next()
            .filter(|w| w.starts_with('E'))
            .ok_or_else(|| format!("expected an error name after -1 in `{}`", cut(text)))?;
        Returned::Error(name.to_owned())
    } else {
        Returned::Value(
            number(value).ok_or_else(|| format!("expected a result, found `{}`", cut(value)))?,
        )
    };
    Ok(Syscall {
        time_ns,
        name: name.to_owned(),
        args,
        result,
    })
}

/// Splits `a, {b, c}, "d)"...)` at top-level commas up to the closing
/// parenthesis; returns the arguments and the index of that parenthesis.
fn split_args(text: &str) -> Option<(Vec<String>, usize)> {
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '{' | '[' => depth += 1,
            ')' if depth == 0 => {
                let last = text[start..i].trim();
                if !last.is_empty() || !args.is_empty() {
                    args.push(last.to_owned());
                }
                return Some((args, i));
            }
            ')' | '}' | ']' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                args.push(text[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    None
}

/// A number as strace prints it: `NULL`, `0x1f`, `8192`, `-1`, or
/// flags joined by `|` (`0x1200000|17`).
#[must_use]
pub fn number(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "NULL" {
        return Some(0);
    }
    if text.contains('|') {
        return text
            .split('|')
            .try_fold(0u64, |acc, part| Some(acc | number(part)?));
    }
    // Arguments may carry strace's comment (`0x3 /* PROT_READ|... */`).
    let text = text.split_whitespace().next()?;
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    if let Some(negative) = text.strip_prefix('-') {
        return negative.parse::<u64>().ok().map(|n| n.wrapping_neg());
    }
    text.parse().ok()
}

/// The file of an fd printed with `-y` (`3</usr/lib/libc.so.6>`), or
/// `None` for `-1` and fds strace could not resolve.
#[must_use]
pub fn fd_path(arg: &str) -> Option<String> {
    let open = arg.find('<')?;
    let close = arg.rfind('>')?;
    (close > open).then(|| unescape(&arg[open + 1..close]))
}

/// The value of `name=value` among a call's arguments (`clone`), or of a
/// field inside the first struct argument (`clone3`'s `{flags=...}`).
#[must_use]
pub fn named(args: &[String], name: &str) -> Option<u64> {
    let key = format!("{name}=");
    for arg in args {
        let body = arg.trim_start_matches('{');
        for field in split_fields(body) {
            if let Some(value) = field.trim().strip_prefix(&key) {
                return number(
                    value
                        .split(" =>")
                        .next()
                        .unwrap_or(value)
                        .trim_end_matches('}'),
                );
            }
        }
    }
    None
}

/// Top-level comma-separated fields of a struct body.
fn split_fields(body: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                fields.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&body[start..]);
    fields
}

/// The text of a C string literal as strace prints it (`"a\x20b"`),
/// without its quotes and escapes.
#[must_use]
pub fn string(arg: &str) -> Option<String> {
    let inner = arg.strip_prefix('"')?;
    let end = inner.rfind('"')?;
    Some(unescape(&inner[..end]))
}

/// Undoes strace's escapes (`\n`, `\\`, `\"`, `\xNN`, octal `\NNN`).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let c = bytes[i + 1];
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'v' => out.push(0x0b),
            b'f' => out.push(0x0c),
            b'x' => {
                if let Some(v) = text
                    .get(i + 2..i + 4)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
                out.push(c);
            }
            b'0'..=b'7' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|b| (b'0'..=b'7').contains(b))
                    .count();
                let value = text[i + 1..i + 1 + digits]
                    .bytes()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value & 0xff).unwrap_or(0));
                i += 1 + digits;
                continue;
            }
            other => out.push(other),
        }
        i += 2;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(line: &str) -> Syscall {
        match parse_line(line) {
            Ok(Some(Entry::Call(call))) => call,
            other => panic!("not a call: {other:?}"),
        }
    }

    #[test]
    fn mmap_with_a_file() {
        let c = call("1796523576.663617909 mmap(NULL, 1974096, 0x1, 0x802, 3</usr/lib/x86_64-linux-gnu/libc.so.6>, 0) = 0x7fcf53113000 <0.000012>");
        assert_eq!(c.time_ns, 1_796_523_576_663_617_909);
        assert_eq!(c.name, "mmap");
        assert_eq!(c.args.len(), 6);
        assert_eq!(number(&c.args[1]), Some(1_974_096));
        assert_eq!(number(&c.args[3]), Some(0x802));
        assert_eq!(
            fd_path(&c.args[4]).as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(c.result, Returned::Value(0x7fcf_5311_3000));
    }

    #[test]
    fn errors_unknown_results_and_exits() {
        let c = call("1.000000001 mremap(0x7fcf528ff000, 65536, 1048576, 0x1) = -1 EFAULT (Bad address) <0.000010>");
        assert_eq!(c.result, Returned::Error("EFAULT".into()));
        let c = call("1.5 exit_group(0)      = ?");
        assert_eq!(c.result, Returned::Unknown);
        assert_eq!(c.time_ns, 1_500_000_000);
        assert_eq!(
            parse_line("2.000000000 +++ killed by SIGSEGV (core dumped) +++"),
            Ok(Some(Entry::Exit {
                time_ns: 2_000_000_000,
                status: Status::Signal("SIGSEGV".into())
            }))
        );
        assert_eq!(parse_line("2.1 --- SIGCHLD {si_signo=17} ---"), Ok(None));
        assert!(parse_line("garbage").is_err());
    }

    #[test]
    fn clone_and_clone3_flags() {
        let c = call("1.0 clone(child_stack=NULL, flags=0x1200000|17, child_tidptr=0x7fcf53110a10) = 1388 <0.000238>");
        assert_eq!(named(&c.args, "flags"), Some(0x1200011));
        let c = call("1.0 clone3({flags=0x3d0f00, child_tid=0x7fcf5310f990, parent_tid=0x7fcf5310f990, exit_signal=0, stack=0x7fcf5290f000, stack_size=0x7fff80, tls=0x7fcf5310f6c0} => {parent_tid=[1387]}, 88) = 1387 <0.000150>");
        assert_eq!(named(&c.args, "flags"), Some(0x3d0f00));
        assert_eq!(named(&c.args, "exit_signal"), Some(0));
        assert_eq!(c.result, Returned::Value(1387));
    }

    #[test]
    fn execve_path_with_escapes() {
        let c = call(
            r#"1.0 execve("/tmp/a\x20b\"c", ["x", "y)"], 0x7ffd /* 35 vars */) = 0 <0.000196>"#,
        );
        assert_eq!(string(&c.args[0]).as_deref(), Some("/tmp/a b\"c"));
        assert_eq!(c.args.len(), 3);
    }
}
