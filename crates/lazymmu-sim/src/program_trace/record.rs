//! The records of a program trace and their one text form.
//!
//! Every record type here prints (`Display`) exactly the line the
//! [`reader`](super::reader) parses back, so the recorder and the parser
//! share one definition of the format; `docs/trace-format.md` describes
//! it for people.

use core::fmt;

/// One line of a trace that carries information.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `@key value`: how the trace was recorded (before the first event).
    Meta {
        /// Lower-case key (`command`, `touches`, `fault-around`, ...).
        key: String,
        /// The rest of the line.
        value: String,
    },
    /// `file <id> <size> <path>`: a file that events name by its id.
    File(FileDecl),
    /// `<time> <tid> ...`: something a thread did or the kernel reported.
    Event(Event),
}

/// A file mapped or executed in the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDecl {
    /// The number events use for it.
    pub id: u32,
    /// Size in bytes when it was recorded, if known (fault-around stops at
    /// the end of the file).
    pub size: Option<u64>,
    /// Its path (percent-escaped in the text).
    pub path: String,
}

/// One event, in time order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Microseconds since the first event.
    pub time_us: u64,
    /// The thread (Linux task id) it happened in.
    pub tid: u32,
    /// What happened.
    pub kind: EventKind,
}

/// What an event is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A system call and what it returned.
    Call {
        /// The call with its arguments.
        call: Call,
        /// Its result.
        result: Outcome,
    },
    /// Page faults on `pages` consecutive pages from `addr`, in one run
    /// with nothing else in between.
    Fault {
        /// Page-aligned address of the first page.
        addr: u64,
        /// Number of pages (at least 1).
        pages: u64,
        /// The access that faulted.
        access: Access,
    },
    /// The kernel reported a VMA as it now is (perf's mmap record): the
    /// mappings an `execve` made, and the result of later `mmap`,
    /// `mprotect` and `brk` calls and stack growth.
    Vma(VmaReport),
    /// The thread ended.
    Exit(ExitStatus),
}

/// The memory-management and process system calls a trace records, with
/// the arguments the address-space model needs (names as in the Linux
/// system call table; `fork`, `vfork` and `clone3` are written as
/// `clone` with the flags they imply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `mmap(addr, len, prot, flags, fd, offset)`; the fd is written as the
    /// file it refers to.
    Mmap {
        /// Requested address (a hint unless `MAP_FIXED`).
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `PROT_*` bits.
        prot: u64,
        /// `MAP_*` flags.
        flags: u64,
        /// The mapped file, `None` for anonymous memory.
        file: Option<u32>,
        /// File offset in bytes.
        offset: u64,
    },
    /// `munmap(addr, len)`.
    Munmap {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `mprotect(addr, len, prot)` (and `pkey_mprotect`).
    Mprotect {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// New `PROT_*` bits.
        prot: u64,
    },
    /// `mremap(old_addr, old_len, new_len, flags, new_addr)`.
    Mremap {
        /// Source address.
        old_addr: u64,
        /// Source length.
        old_len: u64,
        /// New length.
        new_len: u64,
        /// `MREMAP_*` flags.
        flags: u64,
        /// Destination with `MREMAP_FIXED`.
        new_addr: u64,
    },
    /// `brk(addr)`.
    Brk {
        /// Requested break (0 asks for the current one).
        addr: u64,
    },
    /// `madvise(addr, len, advice)`.
    Madvise {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `MADV_*` value.
        advice: u64,
    },
    /// `mlock(addr, len)` and `mlock2(addr, len, flags)`.
    Mlock {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `MLOCK_*` flags (0 for `mlock`).
        flags: u64,
    },
    /// `munlock(addr, len)`.
    Munlock {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `mlockall(flags)`.
    Mlockall {
        /// `MCL_*` flags.
        flags: u64,
    },
    /// `munlockall()`.
    Munlockall,
    /// `clone`, `clone3`, `fork` (`SIGCHLD`) and `vfork`
    /// (`CLONE_VM|CLONE_VFORK|SIGCHLD`); the result is the new thread.
    Clone {
        /// `CLONE_*` flags with the exit signal in the low byte.
        flags: u64,
    },
    /// `execve` and `execveat`.
    Execve {
        /// The program, when known.
        file: Option<u32>,
    },
}

impl Call {
    /// The name written in the trace.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Call::Mmap { .. } => "mmap",
            Call::Munmap { .. } => "munmap",
            Call::Mprotect { .. } => "mprotect",
            Call::Mremap { .. } => "mremap",
            Call::Brk { .. } => "brk",
            Call::Madvise { .. } => "madvise",
            Call::Mlock { .. } => "mlock",
            Call::Munlock { .. } => "munlock",
            Call::Mlockall { .. } => "mlockall",
            Call::Munlockall => "munlockall",
            Call::Clone { .. } => "clone",
            Call::Execve { .. } => "execve",
        }
    }
}

/// What a call returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success with this value (an address for `mmap`, `mremap` and `brk`,
    /// the new thread for `clone`, 0 for the others).
    Returned(u64),
    /// Failure with this error name (`ENOMEM`, or `E` and the number when
    /// the name is unknown).
    Failed(String),
    /// The call never returned (the thread ended inside it).
    Unknown,
}

/// The access a page fault made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A read.
    Read,
    /// A write.
    Write,
    /// An instruction fetch.
    Execute,
    /// Not recorded (the fault event carried no error code).
    Unknown,
}

impl Access {
    /// The letter written in the trace.
    #[must_use]
    pub fn letter(self) -> char {
        match self {
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Execute => 'x',
            Access::Unknown => '?',
        }
    }
}

/// What backs a reported VMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory (`-`).
    Anonymous,
    /// A declared file.
    File(u32),
    /// A mapping the kernel names (`[stack]`, `[heap]`, `[vdso]`,
    /// `[vvar]`, ...), written with its brackets.
    Named(String),
}

/// A VMA as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaReport {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// `PROT_*` bits.
    pub prot: u64,
    /// Shared (`s`) rather than private (`p`).
    pub shared: bool,
    /// What backs it.
    pub backing: Backing,
    /// File offset in bytes (0 for anonymous memory).
    pub offset: u64,
}

/// How a thread ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u32),
    /// A signal killed it (`SIGKILL`, ...).
    Signal(String),
}

/// Writes a path with every byte outside printable ASCII, and `%`,
/// percent-escaped, so that it is one token.
pub(crate) fn escape_path(path: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for byte in path.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            write!(f, "{}", byte as char)?;
        } else {
            write!(f, "%{byte:02x}")?;
        }
    }
    Ok(())
}

struct File(Option<u32>);

impl fmt::Display for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("-"),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Meta { key, value } => write!(f, "@{key} {value}"),
            Record::File(decl) => decl.fmt(f),
            Record::Event(event) => event.fmt(f),
        }
    }
}

impl fmt::Display for FileDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file {} ", self.id)?;
        match self.size {
            Some(size) => write!(f, "{size} ")?,
            None => f.write_str("- ")?,
        }
        escape_path(&self.path, f)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.time_us, self.tid)?;
        match &self.kind {
            EventKind::Call { call, result } => write_call(f, call, result),
            EventKind::Fault {
                addr,
                pages,
                access,
            } => write!(f, "fault {addr:x} {pages} {}", access.letter()),
            EventKind::Vma(report) => report.fmt(f),
            EventKind::Exit(ExitStatus::Code(code)) => write!(f, "exit {code}"),
            EventKind::Exit(ExitStatus::Signal(name)) => write!(f, "exit {name}"),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match *self {
            Call::Mmap {
                addr,
                len,
                prot,
                flags,
                file,
                offset,
            } => write!(
                f,
                " {addr:x} {len:x} {prot:x} {flags:x} {} {offset:x}",
                File(file)
            ),
            Call::Munmap { addr, len } | Call::Munlock { addr, len } => {
                write!(f, " {addr:x} {len:x}")
            }
            Call::Mprotect { addr, len, prot } => write!(f, " {addr:x} {len:x} {prot:x}"),
            Call::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                new_addr,
            } => write!(
                f,
                " {old_addr:x} {old_len:x} {new_len:x} {flags:x} {new_addr:x}"
            ),
            Call::Brk { addr } => write!(f, " {addr:x}"),
            Call::Madvise { addr, len, advice } => write!(f, " {addr:x} {len:x} {advice:x}"),
            Call::Mlock { addr, len, flags } => write!(f, " {addr:x} {len:x} {flags:x}"),
            Call::Mlockall { flags } | Call::Clone { flags } => write!(f, " {flags:x}"),
            Call::Munlockall => Ok(()),
            Call::Execve { file } => write!(f, " {}", File(file)),
        }
    }
}

impl Call {
    /// Whether the call's successful result is an address (written in
    /// hexadecimal) rather than a number.
    #[must_use]
    pub fn returns_address(&self) -> bool {
        matches!(
            self,
            Call::Mmap { .. } | Call::Mremap { .. } | Call::Brk { .. }
        )
    }
}

/// A call and its result together print as `<call> = <result>`; the
/// result alone needs the call to know its radix.
struct ResultOf<'a>(&'a Call, &'a Outcome);

impl fmt::Display for ResultOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Outcome::Returned(value) if self.0.returns_address() => write!(f, "{value:x}"),
            Outcome::Returned(value) => write!(f, "{value}"),
            Outcome::Failed(name) => write!(f, "-{name}"),
            Outcome::Unknown => f.write_str("?"),
        }
    }
}

impl fmt::Display for VmaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vma {:x} {:x} {:x} {} ",
            self.start,
            self.len,
            self.prot,
            if self.shared { 's' } else { 'p' }
        )?;
        match &self.backing {
            Backing::Anonymous => f.write_str("-")?,
            Backing::File(id) => write!(f, "{id}")?,
            Backing::Named(name) => escape_path(name, f)?,
        }
        write!(f, " {:x}", self.offset)
    }
}

/// Writes an event's call with its result in the right radix.
fn write_call(f: &mut fmt::Formatter<'_>, call: &Call, result: &Outcome) -> fmt::Result {
    write!(f, "{call} = {}", ResultOf(call, result))
}
