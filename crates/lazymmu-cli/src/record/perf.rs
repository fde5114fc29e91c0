//! Reading `perf script --ns -F pid,tid,time,event,addr,trace
//! --show-mmap-events --show-task-events --show-lost-events`: the system
//! call entries, page faults, mappings and thread exits the kernel
//! recorded, in the kernel's order.

/// One line of perf's script output that matters to a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `raw_syscalls:sys_enter: NR n (...)`.
    SysEnter {
        /// Thread.
        tid: u32,
        /// Time (ns, perf's clock).
        time_ns: u64,
        /// System call number (x86-64).
        nr: u64,
    },
    /// `exceptions:page_fault_user`/`_kernel` (with the error code) or
    /// `page-faults` (without).
    Fault {
        /// Thread.
        tid: u32,
        /// Time (ns).
        time_ns: u64,
        /// Faulting address.
        addr: u64,
        /// x86 page-fault error code, when recorded.
        error_code: Option<u64>,
    },
    /// `PERF_RECORD_MMAP2`: a VMA as it now is.
    Mmap(Mapping),
    /// `PERF_RECORD_EXIT(pid:tid)`.
    Exit {
        /// Thread.
        tid: u32,
        /// Time (ns).
        time_ns: u64,
    },
    /// `PERF_RECORD_LOST`: events perf dropped.
    Lost {
        /// How many.
        count: u64,
    },
}

fn hex(text: &str) -> Option<u64> {
    let text = text.trim();
    u64::from_str_radix(text.strip_prefix("0x").unwrap_or(text), 16).ok()
}

/// `703.732094692` → nanoseconds.
fn time(text: &str) -> Option<u64> {
    let (secs, frac) = text.trim().trim_end_matches(':').split_once('.')?;
    if frac.len() != 9 {
        return None;
    }
    Some(secs.parse::<u64>().ok()? * 1_000_000_000 + frac.parse::<u64>().ok()?)
}

/// A VMA as `PERF_RECORD_MMAP2` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Thread.
    pub tid: u32,
    /// Time (ns).
    pub time_ns: u64,
    /// Start address.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// `vm_pgoff` in bytes.
    pub pgoff: u64,
    /// `r`, `w`, `x` letters (or `-`), then `s` or `p`.
    pub perms: String,
    /// File path or `//anon`, `[stack]`, ...
    pub name: String,
}

/// Parses one line; `None` for lines that carry nothing for a trace.
#[must_use]
pub fn parse_line(line: &str) -> Option<Event> {
    let line = line.trim();
    if let Some(at) = line.find("PERF_RECORD_LOST") {
        let count = line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        return Some(Event::Lost { count });
    }
    let (ids, rest) = line.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (stamp, rest) = rest.split_once(": ")?;
    let (_, tid) = ids.split_once('/')?;
    let tid: u32 = tid.parse().ok()?;
    let time_ns = time(stamp)?;
    let rest = rest.trim_start();
    if let Some(body) = rest.strip_prefix("raw_syscalls:sys_enter:") {
        let nr = body.trim_start().strip_prefix("NR ")?;
        let nr: u64 = nr.split_whitespace().next()?.parse().ok()?;
        return Some(Event::SysEnter { tid, time_ns, nr });
    }
    if let Some(body) = rest
        .strip_prefix("exceptions:page_fault_user:")
        .or_else(|| rest.strip_prefix("exceptions:page_fault_kernel:"))
    {
        let field = |key: &str| {
            body.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(hex)
        };
        return Some(Event::Fault {
            tid,
            time_ns,
            addr: field("address=")?,
            error_code: field("error_code="),
        });
    }
    if let Some(body) = rest.strip_prefix("page-faults:") {
        return Some(Event::Fault {
            tid,
            time_ns,
            addr: hex(body.split_whitespace().next()?)?,
            error_code: None,
        });
    }
    if let Some(body) = rest.strip_prefix("PERF_RECORD_MMAP2 ") {
        // `pid/tid: [0xSTART(0xLEN) @ 0xPGOFF maj:min ino gen]: rw-p NAME`
        let (owner, body) = body.split_once(": [")?;
        let tid: u32 = owner.split_once('/')?.1.parse().ok()?;
        let (inside, after) = body.split_once("]: ")?;
        let (range, pgoff) = inside.split_once(" @ ")?;
        let (start, len) = range.split_once('(')?;
        let pgoff = pgoff.split_whitespace().next()?;
        let (perms, name) = after.split_once(' ').unwrap_or((after, ""));
        return Some(Event::Mmap(Mapping {
            tid,
            time_ns,
            start: hex(start)?,
            len: hex(len.trim_end_matches(')'))?,
            pgoff: hex(pgoff)?,
            perms: perms.to_owned(),
            name: name.to_owned(),
        }));
    }
    if let Some(body) = rest.strip_prefix("PERF_RECORD_EXIT(") {
        let (_, tid) = body.split_once(':')?;
        let tid: u32 = tid.split_once(')')?.0.parse().ok()?;
        return Some(Event::Exit { tid, time_ns });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_a_recording_produces() {
        assert_eq!(
            parse_line("14653/14653   703.732209643:       raw_syscalls:sys_enter: NR 12 (0, 7ffe45f1c7dc, 0, 37f, 0, 0)"),
            Some(Event::SysEnter { tid: 14653, time_ns: 703_732_209_643, nr: 12 })
        );
        assert_eq!(
            parse_line("14653/14653   703.732094692: exceptions:page_fault_kernel: address=0x5605c5b48130 ip=elf_load error_code=0x2               0"),
            Some(Event::Fault { tid: 14653, time_ns: 703_732_094_692, addr: 0x5605_c5b4_8130, error_code: Some(2) })
        );
        assert_eq!(
            parse_line("17560/17561 1796523659.861806285: page-faults:     562f840ff1e0"),
            Some(Event::Fault {
                tid: 17561,
                time_ns: 1_796_523_659_861_806_285,
                addr: 0x562f_840f_f1e0,
                error_code: None
            })
        );
        assert_eq!(
            parse_line("14653/14653   703.732062083: PERF_RECORD_MMAP2 14653/14653: [0x7ffe45efd000(0x21000) @ 0x7ffffffde000 00:00 0 0]: rw-p [stack]"),
            Some(Event::Mmap(Mapping {
                tid: 14653,
                time_ns: 703_732_062_083,
                start: 0x7ffe_45ef_d000,
                len: 0x21000,
                pgoff: 0x7fff_fffd_e000,
                perms: "rw-p".into(),
                name: "[stack]".into(),
            }))
        );
        assert_eq!(
            parse_line("14658/14661   703.744518194: PERF_RECORD_EXIT(14658:14661):(14653:14653)"),
            Some(Event::Exit {
                tid: 14661,
                time_ns: 703_744_518_194
            })
        );
        assert_eq!(
            parse_line("14653/14653   703.731993712: PERF_RECORD_COMM exec: strace:14653/14653"),
            None
        );
    }

    #[test]
    fn a_file_name_with_spaces_is_kept_whole() {
        let event = parse_line("1/1 1.000000000: PERF_RECORD_MMAP2 1/1: [0x1000(0x2000) @ 0 fe:00 5 0]: r--p /tmp/a b/c.so");
        assert!(matches!(event, Some(Event::Mmap(ref m)) if m.name == "/tmp/a b/c.so"));
    }
}
